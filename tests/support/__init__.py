"""Test utilities shared by every suite: a real CA process, a CA client, broken inputs."""
