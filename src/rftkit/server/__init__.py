"""`rft server`: a self-hosted fine-tuning service with OpenAI's API (files, jobs, events) over rftkit's training
runs. db.py holds the state, app.py the HTTP API, jobs.py runs each job as an `rft train` run."""
