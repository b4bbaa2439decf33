-- inbox and outbox are queue tables: every row is inserted, updated one to three times within a second, and
-- deleted after the retention window. With the default thresholds (20 % of the table) autovacuum comes ever
-- later as they grow, and until it comes the unsent/pending indexes fill with dead entries and the cached
-- generic plans keep the table sizes of their first execution. Vacuum and analyze them after a few thousand
-- changes instead (each autovacuum round, `autovacuum_naptime`, one minute by default).
ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 2000,
                       autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_vacuum_insert_threshold = 2000,
                       autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 2000);
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 2000,
                        autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_vacuum_insert_threshold = 2000,
                        autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 2000);
