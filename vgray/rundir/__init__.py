"""The RUN directory: every path of a RUN, its manifest as typed records, a sweep's table."""
