-- Local demo data only (`supabase db reset` and `supabase start` run it; a hosted
-- `supabase db push` does not). The styles catalogue ships in the migrations.

-- A demo user; the on_auth_user_created trigger gives it a profile with trial credits.
insert into auth.users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data)
values ('00000000-0000-4000-8000-00000000de30', 'authenticated', 'authenticated',
        'demo@portraitkit.local', '{"provider": "email", "providers": ["email"]}', '{}')
on conflict (id) do nothing;
