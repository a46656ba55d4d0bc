-- Internal schema, product settings and the error helper every function of the contract uses.
--
-- `private` is not in the API's exposed schemas: nothing here is reachable through PostgREST.

create schema if not exists private;
revoke all on schema private from public;
grant usage on schema private to service_role;

-- Product settings that are data, not code: changed with an UPDATE, read by the functions.
create table private.settings (
  key text primary key,
  value jsonb not null,
  description text not null
);
alter table private.settings enable row level security;
revoke all on private.settings from public;
grant select on private.settings to service_role;

insert into private.settings (key, value, description) values
  ('trial_credits', '30', 'Credits a new profile starts with.'),
  ('max_styles_per_batch', '20', 'Most styles one batch may ask for.'),
  ('max_custom_prompt_length', '500', 'Longest custom prompt accepted, in characters.'),
  ('max_attempts', '3', 'Attempts a generation gets before it ends failed.'),
  ('retry_base_seconds', '5', 'First retry delay after a retryable failure; doubles each attempt.'),
  ('retry_max_seconds', '300', 'Longest retry delay.'),
  ('default_lease_seconds', '120', 'Lease a worker gets on a claimed generation.');

create function private.setting_int(setting_key text) returns integer
language sql stable
set search_path = ''
as $$
  select (s.value #>> '{}')::integer from private.settings s where s.key = setting_key
$$;

-- Raise a contract error that PostgREST answers with our own status and body.
--
-- SQLSTATE 'PGRST' hands PostgREST the whole response: the message is the JSON body
-- {code, message, details, hint} and the detail carries {status, headers}
-- (PostgREST docs, references/errors: "Raise errors with HTTP status codes"). The direct
-- Postgres transport parses the same JSON, so both see one stable `code`.
create function private.raise_error(
  code text,
  http_status integer,
  message text,
  details jsonb default null,
  hint text default null
) returns void
language plpgsql volatile
set search_path = ''
as $$
begin
  raise sqlstate 'PGRST' using
    message = pg_catalog.jsonb_build_object(
      'code', code,
      'message', message,
      'details', case when details is null then null else details::text end,
      'hint', hint
    )::text,
    detail = pg_catalog.jsonb_build_object('status', http_status, 'headers', '{}'::jsonb)::text;
end
$$;

revoke all on all functions in schema private from public, anon, authenticated;
