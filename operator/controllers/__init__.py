"""The kube boundary: kopf handlers, one reconcile pass per object (read,
parse, call the core, apply), the API client, the ledger cache, worker
scraping and the operator's metrics."""
