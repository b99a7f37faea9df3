"""On demand: a data subject's request (access, portability, erasure, objection, withdrawal of
consent, restriction, its lift) from the trigger form (lifecycle_airflow/subject_dag.py)."""

from lifecycle_airflow.subject_dag import build_subject_dag

subject_request = build_subject_dag()
