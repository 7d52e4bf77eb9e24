"""What an observable declares (``observable``), the options shared by several
observables and the engine's own (``options``), the registry with its entry-point
discovery and named sets (``registry``) and the library's own list (``builtin``)."""
