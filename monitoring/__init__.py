"""Production monitoring: the drift job (``monitor``), the Evidently adapter (``drift``,
the only importer of evidently) and the traffic simulator (``traffic``). Reads the
inference log (``services``) and the registry; never imported by them."""
