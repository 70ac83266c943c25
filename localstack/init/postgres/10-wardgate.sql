-- The gateway's service role, owning the database it fronts (the throwaway test cluster's layout).
CREATE ROLE wardgate_svc LOGIN PASSWORD 'wardgate-local-svc';
ALTER DATABASE orders OWNER TO wardgate_svc;
