"""Load tests of the ChatGLM Triton server: Locust suite, prompt sets, summary, sweep."""
