-- A statement that must be all-or-nothing on a condition it computes (the spine's group flush: every inbox
-- row of the group was still pending) calls this to abort itself; the caller tells it by its SQLSTATE.
CREATE FUNCTION kitt_abort_statement(reason text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'KT001', MESSAGE = reason;
END $$;
