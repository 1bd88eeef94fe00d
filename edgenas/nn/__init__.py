"""Elastic (dynamic) layers of the supernet and the plain (static) layers of extracted subnets."""
