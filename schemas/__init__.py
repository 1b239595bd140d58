"""The data contract as JSON Schema files; selflearn.schema derives Arrow and Spark schemas from them."""
