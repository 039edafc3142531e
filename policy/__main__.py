"""The pulumi-policy pack: ``pulumi preview --policy-pack policy`` enforces the guardrails.

Each resource rule of :mod:`policy.guardrails` becomes a ResourceValidationPolicy and each stack
rule a StackValidationPolicy, all mandatory. The facts a rule needs about the stack (stage,
budget, cost) come from the stack's own ``Pulumi.<stack>.yaml`` next to this directory.
"""

import sys
from pathlib import Path

# The project's packages from this checkout (see stacks/__main__.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulumi_policy import EnforcementLevel, PolicyPack

from policy.pack import policies

PolicyPack(name="aistack-guardrails", enforcement_level=EnforcementLevel.MANDATORY, policies=policies())
