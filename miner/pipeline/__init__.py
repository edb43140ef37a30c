"""The job pipeline and its state: the job spec, the stages, orchestration, the steps, jobs and threshold policy."""
