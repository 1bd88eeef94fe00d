pytest_plugins = ["testbed_fixtures", "scheduling"]
