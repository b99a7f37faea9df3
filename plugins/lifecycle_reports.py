"""Each DAG run's retention report in the Airflow UI: a "Run report" tab on every run, served by
the api-server under /lifecycle (lifecycle_airflow/report_views.py)."""

from airflow.plugins_manager import AirflowPlugin

from lifecycle_airflow.report_views import REPORTS_APP, RUN_REPORT_VIEW


class LifecycleReportsPlugin(AirflowPlugin):
    name = "lifecycle_reports"
    fastapi_apps = [REPORTS_APP]
    external_views = [RUN_REPORT_VIEW]
