"""A run on Ray: the retrying pool, the workers, the stages, and what a run is and resumes from."""
