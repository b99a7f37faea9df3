"""On demand: after a restore of the application database, the erasures since a day made again from
the erasure ledger in the archive (lifecycle_airflow/replay_dag.py)."""

from lifecycle_airflow.replay_dag import build_replay_dag

erasure_replay = build_replay_dag()
