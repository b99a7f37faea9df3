"""On demand: archived evidence restored from the cold archive for a batch or a person, and copied
to a local folder (lifecycle_airflow/restore_dag.py)."""

from lifecycle_airflow.restore_dag import build_restore_dag

archive_restore = build_restore_dag()
