"""The tick: dispatch chunks to RunPod, record results and dead letters, finalize, keep hot."""
