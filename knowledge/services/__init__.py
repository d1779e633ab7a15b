"""Use cases (writes, transactions, dispatch) of the knowledge domain.

Import from the submodules: ``knowledge.services.documents``, ``knowledge.services.index``,
``knowledge.services.engines``.
"""
