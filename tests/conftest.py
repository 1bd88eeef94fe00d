pytest_plugins = ["testbed_fixtures"]
