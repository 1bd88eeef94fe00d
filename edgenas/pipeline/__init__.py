"""The whole pipeline (`edgenas demo`, `edgenas run`): chains the stages, reusing what is on disk."""
