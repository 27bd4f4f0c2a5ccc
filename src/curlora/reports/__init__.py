"""Reports: Markdown and plots rendered from results files only (never from a live run)."""
