"""Hard examples on their way to the object store: the durable disk spool and its uploader."""
