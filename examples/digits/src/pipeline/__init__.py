"""The digits pipeline: UCI handwritten digits to stratified Parquet splits."""
