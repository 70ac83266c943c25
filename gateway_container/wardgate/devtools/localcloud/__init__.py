"""The local cloud without Docker: emulators on loopback for development and tests.

One module per cloud (``aws``, ``gcp``, ``azure``), each exporting a class with the same shape::

    cloud = AwsLocalCloud(workdir)      # GcpLocalCloud, AzureLocalCloud
    env = cloud.start()                 # start the emulators on free loopback ports; the environment
                                        # variables a client needs (endpoints, emulator credentials)
    urls = cloud.provision("wardgate")  # create queues, buckets, tables, keys, secrets; their URLs:
                                        # {"queue", "decision_store", "audit_bucket", "signer", "db_secret"}
    cloud.stop()                        # stop everything it started

``wardgate localcloud up|down|env`` drives them for developers.
"""
