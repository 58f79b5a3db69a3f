"""dflow OPs of the simplify loop and the plain functions they wrap."""
