"""The nightly retention DAGs, one per processing purpose of the policy file (the shipped SMICE
policy, include/policy/smice.yaml, or the file named by LIFECYCLE_POLICY_PATH)."""

from lifecycle.policy import load_policy
from lifecycle_airflow.config import policy_path
from lifecycle_airflow.factory import build_dags

globals().update(build_dags(load_policy(policy_path())))
