"""The pipeline rehearsal: .gitlab-ci.yml's jobs run by gitlab-ci-local against local stand-ins
(see tests/delivery/test_rehearsal.py)."""
