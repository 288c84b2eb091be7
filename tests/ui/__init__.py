"""Browser tests: headless Chromium driving a real JupyterLab and Notebook 7 (the widget panels, the JupyterLab extension)."""
