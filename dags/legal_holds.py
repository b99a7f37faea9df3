"""On demand: an operator's legal holds placed, lifted or listed from the trigger form
(lifecycle_airflow/holds_dag.py)."""

from lifecycle_airflow.holds_dag import build_holds_dag

legal_holds = build_holds_dag()
