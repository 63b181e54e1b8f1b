"""The small shared core every other package may import: the exception tree (``errors``),
atomic files (``files``), the one outbound HTTP client (``http``), settings read from the
environment (``settings``), the GitHub API (``github``) and the lookup of the tools beside
this interpreter (``tools``). It imports no other project package."""
