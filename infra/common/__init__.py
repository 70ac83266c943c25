"""What every cloud's program shares: the stack configuration schema, the naming scheme, the
gateway's rendered runtime configuration and the repository paths the programs need."""
