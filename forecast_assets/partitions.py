"""Partitions, defined once: one partition per customer.

Customers are added only by the explicit command (``forecast-customers add``), the demo, or (with
the new-data sensor) when their first files land; never implicitly by an asset.
"""

import dagster as dg

customers_partitions_def = dg.DynamicPartitionsDefinition(name="customers")
