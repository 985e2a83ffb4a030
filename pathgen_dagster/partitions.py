"""The one partitioning of the lakehouse: a dynamic partition per slide."""

import dagster as dg

SLIDES_PARTITION = "slides"

slide_partitions = dg.DynamicPartitionsDefinition(name=SLIDES_PARTITION)
