"""wardgate's Pulumi programs (``aws/``, ``gcp/``, ``azure/``) and what they share (``common/``).

A package so that tests and the programs import the same modules by the same names
(``infra.common.config``, ``infra.aws.wardgate_aws``) from the repository root.
"""
