"""The OpenLineage provider's extractor for the rule steps, named by airflow.cfg's `[openlineage]
extractors`: it gives each lifecycle Asset of a step task's inlets and outlets as the dataset where it
is in this deployment (lineage.dataset_of). Apart from lineage.py, which a DAG file's parse imports,
because the provider takes more than half a second to import and only a worker with OpenLineage
enabled needs it."""

from __future__ import annotations

from airflow.providers.openlineage.extractors.base import BaseExtractor, OperatorLineage
from openlineage.client.event_v2 import Dataset

from lifecycle_airflow import config
from lifecycle_airflow.lineage import dataset_of, is_lifecycle_asset


class RuleStepExtractor(BaseExtractor):
    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        # Every @task is one; those without lifecycle Assets keep the provider's own handling.
        return ["_PythonDecoratedOperator"]

    def _execute_extraction(self) -> OperatorLineage:
        inlets = [asset for asset in self.operator.inlets if is_lifecycle_asset(asset)]
        outlets = [asset for asset in self.operator.outlets if is_lifecycle_asset(asset)]
        if not inlets and not outlets:
            # Nothing here: the provider then reads the task's hook lineage or other inlets and outlets.
            return OperatorLineage()
        app_url, archive_uri = config.app_database_url(), config.archive_uri()

        def datasets(assets) -> list[Dataset]:
            return [Dataset(*dataset_of(asset, app_url, archive_uri)) for asset in assets]

        return OperatorLineage(inputs=datasets(inlets), outputs=datasets(outlets))
