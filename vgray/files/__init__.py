"""Where bytes live: local paths and URIs (pyarrow filesystems), S3 at one request per read."""
