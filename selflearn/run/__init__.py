"""One run: the declared stages (stages), the run context that holds settings, controls,
the ROOT layout and Spark (runner.Run), and what makes a run trustworthy to publish:
atomic publish (publish), the publish gate (gate), cross-run state (state), the report
(report) and forget requests (forget). Executors (cli, pipelines/) only loop over
stages.STAGES."""
