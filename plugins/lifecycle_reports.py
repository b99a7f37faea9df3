"""The lifecycle pages of the Airflow UI, served by the api-server under /lifecycle
(lifecycle_airflow/report_views.py): each DAG run's report in its "Run report" tab, and in the menu the
retention DAGs' trends and the policy's documentation."""

from airflow.plugins_manager import AirflowPlugin

from lifecycle_airflow.report_views import LIFECYCLE_APP, POLICY_VIEW, RUN_REPORT_VIEW, TRENDS_VIEW


class LifecycleReportsPlugin(AirflowPlugin):
    name = "lifecycle_reports"
    fastapi_apps = [LIFECYCLE_APP]
    external_views = [RUN_REPORT_VIEW, TRENDS_VIEW, POLICY_VIEW]
