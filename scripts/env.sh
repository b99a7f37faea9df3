# shellcheck shell=bash
# Source me (bash): the environment every project script runs Airflow in.
AIRFLOW_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AIRFLOW_HOME
export PATH=$AIRFLOW_HOME/.venv/bin:$PATH
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# Processes started from one shell (e.g. `airflow standalone`'s scheduler and api-server) must
# sign and check execution-API tokens with the same key; airflow.cfg holds no secrets.
export AIRFLOW__API_AUTH__JWT_SECRET=${AIRFLOW__API_AUTH__JWT_SECRET:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
# No network here: boto3 must not probe the EC2 metadata endpoint for credentials.
export AWS_EC2_METADATA_DISABLED=true
