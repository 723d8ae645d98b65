//! `cargo xtask fetch` writes through hf-hub; the harness binds from the same cache. Offline:
//! a reference and a snapshot made as hf-hub makes them must be where each side looks.

use modelqa::support::bind::{Location, SearchRoots, hf_repo_dir, hf_snapshot_dir, locate};
use modelqa::support::playbook::spec::ExpectedShape;

fn model(id: &str, revision: &str) -> modelqa::support::playbook::Model {
    modelqa::support::playbook::Model {
        id: id.into(),
        slug: "m".into(),
        revision: revision.into(),
        path: None,
        architecture: None,
        size: None,
        expect: ExpectedShape::default(),
        prompt_template: "{prompt}".into(),
        artifacts: Vec::new(),
    }
}

#[test]
fn hf_hub_and_the_binder_agree_on_the_cache_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("hub");
    for (id, revision, commit) in [("Org/Tiny-Model", "main", "0123abcd"), ("Org/Other", "v1.0", "fedc9876")]
    {
        let hub = hf_hub::Cache::new(cache.clone()).repo(hf_hub::Repo::with_revision(
            id.into(),
            hf_hub::RepoType::Model,
            revision.into(),
        ));
        hub.create_ref(commit).expect("hf-hub writes the reference");
        let snapshot = hf_snapshot_dir(&hf_repo_dir(&cache, id), revision);
        assert!(snapshot.ends_with(commit), "{}", snapshot.display());
        std::fs::create_dir_all(&snapshot).expect("mkdir");
        std::fs::write(snapshot.join("config.json"), "{}").expect("write");
        assert_eq!(
            hub.get("config.json"),
            Some(snapshot.join("config.json")),
            "hf-hub finds what the layout says"
        );
        let roots = SearchRoots { model_dir: None, hf_cache: Some(cache.clone()) };
        assert_eq!(
            locate(&model(id, revision), &roots),
            Location::Found(snapshot),
            "the binder finds it too"
        );
    }
}
