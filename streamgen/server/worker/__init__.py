"""The model worker and its scheduling glue: the threads around one model replica, transactional steps, what the server asks of the pipeline contract."""
