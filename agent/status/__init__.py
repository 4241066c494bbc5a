"""What operators see: the typed status, its reporter, the words of the page, and metrics."""
