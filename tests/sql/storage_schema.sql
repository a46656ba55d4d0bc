-- A minimal model of Supabase Storage's database schema, for tests only.
--
-- Written from the documented shape of the `storage` schema (Supabase docs: guides/storage,
-- "Storage schema" and "Access control"), not from Storage's own migrations. It gives the
-- test database what a Supabase project has before our migrations run, so that
-- supabase/migrations/*_storage_bucket.sql creates its bucket row and policies for real,
-- and tests/storage_api.py reads and writes storage.objects as the caller's role, letting
-- those policies decide. Apply it after sql/ and before supabase/migrations.

do $$
begin
  -- Owns the storage schema on Supabase; Storage switches from it to the caller's role.
  if not exists (select from pg_roles where rolname = 'supabase_storage_admin') then
    create role supabase_storage_admin nologin noinherit createrole;
  end if;
end
$$;

create schema if not exists storage authorization supabase_storage_admin;
grant usage on schema storage to anon, authenticated, service_role;

create table if not exists storage.buckets (
  id text primary key,
  name text not null,
  owner uuid,
  owner_id text,
  public boolean default false,
  file_size_limit bigint,
  allowed_mime_types text[],
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);
create unique index if not exists buckets_name_key on storage.buckets (name);

create table if not exists storage.objects (
  id uuid primary key default gen_random_uuid(),
  bucket_id text references storage.buckets (id),
  name text,
  owner uuid,
  owner_id text,
  metadata jsonb,
  user_metadata jsonb,
  version text,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_accessed_at timestamptz default now(),
  path_tokens text[] generated always as (string_to_array(name, '/')) stored
);
-- One object per name in a bucket: uploads upsert on this pair.
create unique index if not exists objects_bucket_id_name_key on storage.objects (bucket_id, name);
create index if not exists objects_name_prefix on storage.objects (name text_pattern_ops);

alter table storage.buckets owner to supabase_storage_admin;
alter table storage.objects owner to supabase_storage_admin;

-- Every object is behind RLS; with no policy, nobody but the service role sees anything.
alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;

-- The path helpers policies use: 'a/b/c.png' has folders {a,b}, file name 'c.png' and
-- extension 'png' (the whole file name when it has no dot).
create or replace function storage.foldername(name text) returns text[]
language sql immutable
as $$
  select (string_to_array(name, '/'))[1:cardinality(string_to_array(name, '/')) - 1]
$$;

create or replace function storage.filename(name text) returns text
language sql immutable
as $$
  select (string_to_array(name, '/'))[cardinality(string_to_array(name, '/'))]
$$;

create or replace function storage.extension(name text) returns text
language sql immutable
as $$
  select reverse(split_part(reverse(storage.filename(name)), '.', 1))
$$;

create or replace function storage.touch_updated_at() returns trigger
language plpgsql
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create or replace trigger objects_touch_updated_at
  before update on storage.objects
  for each row execute function storage.touch_updated_at();

-- Storage refuses deletes that bypass its API (the bytes would be orphaned): its own
-- requests set storage.allow_delete_query, plain SQL does not.
create or replace function storage.refuse_direct_delete() returns trigger
language plpgsql
as $$
begin
  if coalesce(current_setting('storage.allow_delete_query', true), '') <> 'true' then
    raise exception 'Direct deletion from storage tables is not allowed. Use the Storage API instead.'
      using errcode = '42501';
  end if;
  return null;
end
$$;

create or replace trigger buckets_refuse_direct_delete
  before delete on storage.buckets
  for each statement execute function storage.refuse_direct_delete();
create or replace trigger objects_refuse_direct_delete
  before delete on storage.objects
  for each statement execute function storage.refuse_direct_delete();

alter function storage.foldername(text) owner to supabase_storage_admin;
alter function storage.filename(text) owner to supabase_storage_admin;
alter function storage.extension(text) owner to supabase_storage_admin;

-- Supabase's grants: the API roles may do everything the policies allow.
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;
grant execute on function storage.foldername(text), storage.filename(text),
  storage.extension(text) to anon, authenticated, service_role;
