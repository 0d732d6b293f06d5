"""The planning label on the PACS: a Key Object Selection document per planning study
(docs/pacs-label.md). ``titles`` holds the hard block on rejection titles, ``kos`` the pure
builder, ``source`` re-reads the study's own attributes, ``service`` decides and enqueues,
``delivery`` sends (C-STORE, STOW-RS, files)."""
