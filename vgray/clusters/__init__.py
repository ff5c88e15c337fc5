"""The Ray cluster a run uses: connecting, autoscaling, KubeRay, the Jobs API, live progress."""
