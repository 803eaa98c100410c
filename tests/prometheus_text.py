"""Reading samples out of a Prometheus exposition text, as a scraper would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_value(text: str, name: str, **labels) -> float | None:
    """The value of the sample `name{labels}` (labels exactly these); None when there is none."""
    wanted = {key: str(value) for key, value in labels.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    return None
