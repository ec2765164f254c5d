"""The builder's version. Bump it whenever the repository it writes changes for the same inputs."""

BUILDER_VERSION = "1.2.2"
