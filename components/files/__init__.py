"""Files shipped to the stage hosts (scripts the hosts run at boot)."""
