"""Reading one sample of the backend's /metrics (Prometheus' text format) in tests."""
from prometheus_client.parser import text_string_to_metric_families


def metric(client, name: str, **labels) -> float:
    """One sample of /metrics (Prometheus' text format); 0 when absent."""
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0
